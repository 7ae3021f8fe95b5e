"""AlphaFold-Multimer (v1, v2, v3): only what differs from the monomer model.

The Evoformer, the triangle and MSA modules, the transitions and the heads are
the monomer's (``af2cpu_plugin.engine``), as haiku's ``modules_multimer`` reuses
``modules``. This package holds the multimer-only parts: the in-model MSA
sampling, the relative chain encoding and input features, the template
embedding, the structure module of ``folding_multimer`` and the model that
puts them together.
"""
