"""Building blocks shared by every sb3-flow method: flow math, networks, demonstrations, experts."""
