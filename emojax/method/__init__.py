"""The paper's protocol as definitions: the exact prompts and their tokenisation, the paper's
hyperparameters and their transfer by depth, and the direction equations. Pure functions on top of
the data records and the model configuration."""
