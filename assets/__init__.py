"""The top layer: Dagster definitions (thin assets, checks, resources, the IO manager), the
composed run config and the `factory` command line. `dagster dev -m assets.definitions` loads
`defs`; importing this package alone loads nothing, so `factory --help` starts fast."""
