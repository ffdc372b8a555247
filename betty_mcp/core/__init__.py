"""The lowest layer: errors, configuration, manifests, the catalog, secrets and the shared rules."""
