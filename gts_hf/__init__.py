"""gts-hf: GTS few-shot classifiers ("AI that produces AI") on the Hugging Face stack.

Importing the package registers ``GTSConfig``/``GTSForFewShotClassification`` with the Auto classes and the
``gts-few-shot`` pipeline with ``transformers.pipeline``.
"""

__version__ = "0.1.0"

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification
from transformers.pipelines import PIPELINE_REGISTRY

from .backbones import DEFAULT_STUDENT, resolve_model_path
from .configuration import GTSConfig
from .data import DataError, Example, FewShotTask, build_task, load_task
from .engine import GTSEngine, TrainedModel, evaluate_examples, load_trained
from .inference import predict
from .modeling import GTSForFewShotClassification
from .pipelines import GTSFewShotPipeline
from .retrieval import KNNDatastore
from .trainer import GTSTrainer
from .training_args import GTSTrainingArguments


def _register() -> None:
    AutoConfig.register(GTSConfig.model_type, GTSConfig, exist_ok=True)
    AutoModel.register(GTSConfig, GTSForFewShotClassification, exist_ok=True)
    AutoModelForSequenceClassification.register(GTSConfig, GTSForFewShotClassification, exist_ok=True)
    PIPELINE_REGISTRY.register_pipeline("gts-few-shot", pipeline_class=GTSFewShotPipeline,
                                        pt_model=GTSForFewShotClassification, type="text")


_register()

__all__ = [
    "DEFAULT_STUDENT", "DataError", "Example", "FewShotTask", "GTSConfig", "GTSEngine", "GTSFewShotPipeline",
    "GTSForFewShotClassification", "GTSTrainer", "GTSTrainingArguments", "KNNDatastore", "TrainedModel",
    "build_task", "evaluate_examples", "load_task", "load_trained", "predict", "resolve_model_path",
]
