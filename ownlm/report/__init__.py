"""ownlm.report stage."""
