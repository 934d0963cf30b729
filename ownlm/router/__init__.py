"""ownlm.router stage."""
