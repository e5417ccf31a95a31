import time

import matplotlib.image
import tensorflow as tf

from tfpretrain import plots, report


def test_read_scalars_keeps_the_last_value_of_a_step_written_twice(tmp_path):
    for values in ({1: 3.0, 2: 2.0, 3: 1.0}, {3: 0.5, 4: 0.25}):  # a resumed run rewrites step 3
        writer = tf.summary.create_file_writer(str(tmp_path))
        with writer.as_default():
            for step, value in values.items():
                tf.summary.scalar("loss", value, step=step)
        writer.close()
        time.sleep(1.1)  # event file names and mtimes are per second
    assert report.read_scalars(str(tmp_path), "loss") == [(1, 3.0), (2, 2.0), (3, 0.5), (4, 0.25)]
    assert report.read_scalars(str(tmp_path), "accuracy") == []


def test_plots_are_sized_for_their_content(tmp_path):
    names = [f"class {i}" for i in range(12)]
    matrix = [[5 if i == j else 1 for j in range(12)] for i in range(12)]
    plots.plot_confusion_matrix(matrix, names, tmp_path / "cm.png")
    small = tmp_path / "cm2.png"
    plots.plot_confusion_matrix([[3, 1], [0, 4]], ["neg", "pos"], small)
    big_h, big_w = matplotlib.image.imread(tmp_path / "cm.png").shape[:2]
    small_h, small_w = matplotlib.image.imread(small).shape[:2]
    assert big_h > small_h and big_w > small_w  # 12 class names need more room than 2
    history = [{"step": 10, "accuracy": 0.9, "loss": 0.3},
               {"step": 20, "accuracy": 0.95, "loss": 0.2}]
    plots.plot_learning_curves([(s, 1.0 / s) for s in range(1, 21)], history,
                               tmp_path / "lc.png", 10)
    height, width = matplotlib.image.imread(tmp_path / "lc.png").shape[:2]
    assert width > 2 * height  # two panels side by side
