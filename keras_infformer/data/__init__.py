"""Data pipelines: stream segmentation and the synthetic sorting task."""

from keras_infformer.data import sorting
from keras_infformer.data.sorting import (
    SortingDataset,
    frequency_order,
    generate_sequences,
    sorting_accuracy,
    sorting_examples,
)
from keras_infformer.data.streaming import StreamingDataset
