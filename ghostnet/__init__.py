"""ghostmaps.ghostnet: GhostNet (Han et al., CVPR 2020) and Ghost versions of classic networks."""
