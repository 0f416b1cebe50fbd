"""What people use: the command line, the catalogue of runs, figures."""
