"""The files of a tuner folder (the stable format the README's "Tuner files" section documents):
its weights, its config, its model card. Names only, no torch: finding a tuner (`hub.py`) needs
them before anything loads."""

WEIGHTS_NAME = "tuner.safetensors"
CONFIG_NAME = "tuner_config.json"
CARD_NAME = "README.md"
