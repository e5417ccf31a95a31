"""TensorFlow's ``saved_model_cli`` with TensorFlow Text's ops registered first.

The exports tokenise inside the graph with TF Text ops; the stock ``saved_model_cli run`` does
not import ``tensorflow_text`` and fails with "Op type not registered 'RegexSplitWithOffsets'".
Same arguments as ``saved_model_cli``:

    python -m tfpretrain.saved_model_cli run --dir runs/bert_text_classifier/export \\
        --tag_set serve --signature_def serving_default \\
        --input_exprs 'text=["Shares fell 5% after the results."]'
"""

import sys

if __name__ == "__main__":
    import tensorflow_text  # noqa: F401  (registers the ops before the SavedModel is read)
    from tensorflow.python.tools import saved_model_cli

    sys.argv[0] = "saved_model_cli"
    sys.argv = [a for a in sys.argv if a != "--verbose"]  # --verbose: see tfpretrain/_entry.py
    saved_model_cli.main()
