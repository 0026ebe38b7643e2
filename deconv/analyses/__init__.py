"""Analyses over a dataset: the top-9 scan (Fig. 2), its checkpoints, occlusion (Fig. 7) and evolution (Fig. 4)."""
