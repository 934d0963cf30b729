"""ownlm.models stage."""
