"""Head plugins: MLPs on pooled features (projectors, expanders, predictors). Base: jepaflow.interfaces.Head."""
