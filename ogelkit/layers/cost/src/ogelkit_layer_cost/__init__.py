"""O7s layer 3, ``cost``: estimated cost ceiling per operation. See docs/layers/cost.md."""

from ogelkit_layer_cost.layer import Cost
from ogelkit_layer_cost.options import CostOptions

__all__ = ["Cost", "CostOptions"]
