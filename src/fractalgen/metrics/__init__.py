"""Generation-quality metrics: FID, Inception Score, precision/recall, on any feature network.

    from fractalgen.metrics import InceptionNet, ImageSet, load_statistics, score_images
    scores = score_images(ImageSet("samples/"), InceptionNet(), load_statistics("adm_in64_stats.npz"))

How the features are computed (resizing included) is documented in inception.py.
"""
from .features import FeatureNet, FunctionFeatureNet, extract, mnist_classifier_net
from .fid import Statistics, frechet_distance, load_statistics, save_statistics, statistics
from .images import ImageSet
from .inception import InceptionNet, resize_like_tf1
from .inception_score import inception_score
from .precision_recall import precision_recall
from .scores import Scores, reference_statistics, score_images

__all__ = [
    "FeatureNet",
    "FunctionFeatureNet",
    "ImageSet",
    "InceptionNet",
    "Scores",
    "Statistics",
    "extract",
    "frechet_distance",
    "inception_score",
    "load_statistics",
    "mnist_classifier_net",
    "precision_recall",
    "reference_statistics",
    "resize_like_tf1",
    "save_statistics",
    "score_images",
    "statistics",
]
