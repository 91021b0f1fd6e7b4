"""Deployment of the geofm stages on managed services (the SageMaker Pipeline).

Nothing here is imported by the ``geofm`` library; the SageMaker SDK is the optional
``sagemaker`` extra (``pip install "geofm[sagemaker]"``).
"""
