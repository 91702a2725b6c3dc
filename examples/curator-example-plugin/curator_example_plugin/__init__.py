"""An example curator plugin: one selection strategy, registered through an entry point."""
