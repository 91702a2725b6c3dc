"""Built-in selection strategies. Each uses only curator's public API (curator.strategy,
curator.signals, curator.dynamics), exactly as a third-party plugin package would; curator finds
them through the lazy targets in `curator.strategy.BUILTINS`."""
