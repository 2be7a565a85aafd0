"""opsledger: GitOps for IT operations — desired state, changes, approvals and audit in git."""

__version__ = "0.1.0"
