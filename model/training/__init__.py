"""Training DriveMoE / Drive-pi0 on Bench2Drive: data preparation, dataset, loop, checkpoints."""
