"""unetzoo: published U-Net variants for 2D, 3D and 3D+t medical image segmentation behind one pipeline."""

from unetzoo.errors import UnetzooError
from unetzoo.models.registry import create_model, list_models, model_info

__version__ = "0.1.0"
__all__ = ["UnetzooError", "create_model", "list_models", "model_info", "__version__"]
