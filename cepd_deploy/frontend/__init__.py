"""The torch side: networks as people write them in, CEPD models and Plans out.

* :mod:`~cepd_deploy.frontend.lower`: an ``nn.Module`` -> the Plan (torch.fx, BN folding, the
  cheapest contraction order of every CEPD layer).
* :mod:`~cepd_deploy.frontend.load`: ``load_plan``, what every command uses to turn a model
  argument (zoo name, model file, module, Plan) into a Plan.
"""
