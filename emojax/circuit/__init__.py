"""Global emotion circuits: budgets, allocation, construction and overlap statistics."""
from emojax.circuit.allocation import Allocation, allocate, top_k_per_layer
from emojax.circuit.budget import Budget, literal_budget, transferred_budget
from emojax.circuit.build import Circuit, build_circuit, split_budget
from emojax.circuit.overlap import jaccard, mean_pairwise, overlap_coefficient, pairwise

__all__ = ["Allocation", "Budget", "Circuit", "allocate", "build_circuit", "jaccard", "literal_budget",
           "mean_pairwise", "overlap_coefficient", "pairwise", "split_budget", "top_k_per_layer",
           "transferred_budget"]
