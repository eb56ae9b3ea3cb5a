"""The model families. Each one is a subpackage: model.py (nnx modules), convert.py (its Hugging
Face conversion table) and the pre/post-processing it needs. `polyformer.hub` maps config.json's
`model_type` to a family; `convert.py` here is the table machinery every family shares."""
