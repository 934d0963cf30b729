"""ownlm.gateway stage."""
