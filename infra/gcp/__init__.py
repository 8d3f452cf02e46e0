"""Google Cloud: the APIs, the cluster and its pools, the runners' identities, CI access,
the image mirror, and the IDs they take in the project."""
