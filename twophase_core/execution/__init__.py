"""Where work runs: jobs in their own processes, workers, Ray, the executor and device."""
