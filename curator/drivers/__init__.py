"""Drivers: applications built on the library — runs that train, measure and write reports.

The library (everything below this layer in docs/ARCHITECTURE.md's layer table) never imports a
driver; the CLI and users call them. Each submodule is imported on its own (nothing here), so
``import curator.drivers`` costs nothing.
"""
