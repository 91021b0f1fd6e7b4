"""Processing-job entry points: ``python -m geofm.steps.<stage>``.

Thin shims around the stage command lines (``geofm chip`` ...) for containers, where
each input arrives as its own mounted folder: they assemble a run root from those
folders, run the stage on it and leave its products in output folders of the root.
The layout, the sharding scheme and the manifests are described in
:mod:`geofm.steps._mounts`. The SageMaker pipeline (``pipelines/sagemaker_pipeline.py``)
wires the four of them as ProcessingSteps; they run just as well on a laptop.
"""
