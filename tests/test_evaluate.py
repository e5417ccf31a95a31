import numpy as np

from tfpretrain.tasks.classification import classification_metrics, format_report


def test_metrics_by_hand():
    labels = [0, 0, 1, 1, 2, 2]
    predictions = [0, 1, 1, 1, 2, 0]
    m = classification_metrics(labels, predictions, ["a", "b", "c"])
    assert m["accuracy"] == 4 / 6
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # precision a=1/2, b=2/3, c=1; recall a=1/2, b=1, c=1/2
    np.testing.assert_allclose(m["macro_precision"], (0.5 + 2 / 3 + 1) / 3)
    np.testing.assert_allclose(m["macro_recall"], (0.5 + 1 + 0.5) / 3)
    np.testing.assert_allclose(m["per_class"]["b"]["f1"], 2 * (2 / 3) / (2 / 3 + 1))
    assert m["per_class"]["c"]["support"] == 2
    assert "macro avg" in format_report(m, ["a", "b", "c"])


def test_class_never_predicted_scores_zero_not_nan():
    m = classification_metrics([0, 1], [0, 0], ["a", "b"])
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_label_smoothing_mixes_the_uniform_distribution_into_the_target():
    import tensorflow as tf

    from tfpretrain.tasks.classification import classification_loss

    logits = tf.constant([[2.0, 0.0, -1.0]])
    log_p = tf.nn.log_softmax(logits)[0].numpy()
    plain, _ = classification_loss(tf.constant([0]), logits)
    smooth, _ = classification_loss(tf.constant([0]), logits, label_smoothing=0.3)
    assert abs(float(plain[0]) + log_p[0]) < 1e-6
    target = np.array([0.7, 0.0, 0.0]) + 0.3 / 3
    assert abs(float(smooth[0]) + (target * log_p).sum()) < 1e-5
