"""``edsr serve``: a local web page and HTTP API for upscaling with the models of this project.

>>> from edsr.serve import ServeConfig, create_app, load_models
>>> app = create_app(load_models(["model.safetensors"]), ServeConfig(workers=1))

``create_app`` returns a FastAPI app (its schema at ``/openapi.json``, docs at ``/docs``);
:func:`serve` runs it with uvicorn. Needs the ``serve`` extra (fastapi, uvicorn,
python-multipart).
"""

from edsr.serve.app import ApiError, create_app
from edsr.serve.config import ServeConfig
from edsr.serve.models import BICUBIC, ServedModel, default_model_spec, load_models
from edsr.serve.run import background_server, serve

__all__ = [
    "BICUBIC",
    "ApiError",
    "ServeConfig",
    "ServedModel",
    "background_server",
    "create_app",
    "default_model_spec",
    "load_models",
    "serve",
]
