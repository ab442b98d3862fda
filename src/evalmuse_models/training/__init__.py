"""Training loops (accelerate). The scripts in ``train_scripts/`` are thin command-line shells over these."""
