"""Request features: length, domain, difficulty estimate, caller extras."""

from stopbandit.features.difficulty import DifficultyEstimator, DomainPrior, TextDifficulty
from stopbandit.features.domain import DomainClassifier, KeywordDomainClassifier
from stopbandit.features.extract import FeatureConfig, FeatureExtractor, Features, validate_extra
from stopbandit.features.text import TextStats, text_stats

__all__ = [
    "DifficultyEstimator",
    "DomainClassifier",
    "DomainPrior",
    "FeatureConfig",
    "FeatureExtractor",
    "Features",
    "KeywordDomainClassifier",
    "TextDifficulty",
    "TextStats",
    "text_stats",
    "validate_extra",
]
