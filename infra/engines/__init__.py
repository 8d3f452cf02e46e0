"""The runner engines (CML with KEDA, actions-runner-controller, GitLab Runner) and what
they share; each works on any Kubernetes cluster."""
