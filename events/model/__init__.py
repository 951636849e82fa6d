"""The ``model:{model_id}`` stream: one registered model, its versions and their governance. Pure.

    decider        MODEL (the Decider the shell runs), decide, and the command -> decision table
    commands       what the shell may ask for
    events         the facts the stream records
    state          what the rules need to know (ModelState), snapshot-friendly
    evolve         how each event changes the state
    guards         preconditions several decisions share
    registration   decisions on the model and its versions' metadata
    lifecycle      stages, aliases and rollback
    promotions     promotion requests, approvals and their execution
    deployments    what runs where, reported by deployment systems; drift

Nothing is re-exported here: import names from the module that defines them.
"""
