"""What ``models/`` holds and how it is read: file names and the model card, the ONNX
export, integrity checks, the int8 export and its policy, and the one ``Predictor`` that
``evaluate``, the API and ``imgclf predict`` all use.
"""
