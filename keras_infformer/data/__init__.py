"""Data pipelines: stream segmentation and the synthetic sorting task."""

from keras_infformer.data import sorting
from keras_infformer.data.sorting import SortingDataset
from keras_infformer.data.sorting import frequency_order
from keras_infformer.data.sorting import generate_sequences
from keras_infformer.data.sorting import sorting_accuracy
from keras_infformer.data.sorting import sorting_examples
from keras_infformer.data.streaming import StreamingDataset
