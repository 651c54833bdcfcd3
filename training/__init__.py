"""Turn a folder of labelled photos into an exported fastai learner (no web code here)."""
