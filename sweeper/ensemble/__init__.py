"""Best-of seed ensembles: the plan, the averaged model, its files, its exports."""
