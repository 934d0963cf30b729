"""ownlm.rollout stage."""
