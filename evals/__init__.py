"""genlab's eval runner: suites in this folder, reports under runs/."""
