"""Optimizers."""

from icl.optim.manifold_adam import ManifoldAdam as ManifoldAdam
from icl.optim.manifold_sgd import ManifoldSGD as ManifoldSGD
from icl.optim.manifolds import manifold_point as manifold_point
from icl.optim.manifolds import project_to_manifold as project_to_manifold
from icl.optim.riemannian_adam import ProjectedRiemannianAdam as ProjectedRiemannianAdam
