"""Carrying updates across an air gap: `export` on the connected side, `import` at the site.

An update is one tar file (`archive`): a signed manifest, one git bundle per changed repo, the catalog
rows and the list of images they point at.
"""
