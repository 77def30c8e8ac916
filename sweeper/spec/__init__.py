"""What a study declares: the study file, its objectives, budget, stop rule and warm start."""
