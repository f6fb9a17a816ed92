"""mixedr1: GRPO with the Mixed-R1 unified reward for vision-language models, in plain PyTorch."""
