"""Model registry: versions, deployments, promote and rollback."""
