"""``securefl deploy``: write the Flower App a deployment runs, and check a bank's or the CKKS key
holder's node setup before starting its SuperNode (manifest fully signed, identity key listed in
the right role, the data readable, the key holder's usage file readable)."""

from __future__ import annotations

from typing import Any

__all__ = ["register_deploy"]


def _app(args: Any) -> int:
    from securefl.deploy.app import write_app
    from securefl.deploy.server import DeployServer, ServerSettings

    if args.server_config:
        DeployServer(ServerSettings.load(args.server_config))  # refuses a bad manifest / key now
    path = write_app(args.out, args.server_config)
    print(f"Flower App written to {path}; run it with: flwr run {path} <connection>")
    return 0


def _check_node(args: Any) -> int:
    from securefl.deploy.client import BankNode, load_bank_csv

    cfg = {"member": args.member, "key": args.key, "manifest": args.manifest,
           "data-path": args.data, "label": args.label}
    if args.passphrase_file:
        cfg["passphrase-file"] = args.passphrase_file
    node = BankNode.from_node_config(cfg)
    fed = node.federation()
    key = node.identity(fed)
    X, _ = load_bank_csv(node.data_path, node.label)
    print(f"OK: {node.member} in federation {fed.federation_id!r} (manifest {fed.digest[:16]}), "
          f"identity {key.verify_key.fingerprint()}, {X.shape[0]} rows x {X.shape[1]} features")
    print("--node-config " + " ".join(f'{k}="{v}"' for k, v in cfg.items()))
    return 0


def _check_key_holder(args: Any) -> int:
    from securefl.deploy.ckks import KeyHolderNode

    cfg = {"role": "ckks-key-holder", "member": args.member, "key": args.key,
           "manifest": args.manifest}
    for opt, name in (("passphrase_file", "passphrase-file"), ("usage_file", "usage-file"),
                      ("ckks_keys", "ckks-keys")):
        if getattr(args, opt):
            cfg[name] = getattr(args, opt)
    node = KeyHolderNode.from_node_config(cfg)
    fed = node.federation()
    key = node.identity(fed)
    usage = node.ensure_usage()  # created at enrolment: later, a missing file is a lost one
    print(f"OK: {node.member} is the ckks-key-holder of {fed.federation_id!r} (manifest "
          f"{fed.digest[:16]}), identity {key.verify_key.fingerprint()}; a fresh CKKS key per "
          f"round; {len(usage.decrypted)} rounds released, {len(usage.keyed)} sessions keyed "
          f"(usage file {node.usage_path})")
    print("--node-config " + " ".join(f'{k}="{v}"' for k, v in cfg.items()))
    return 0


def register_deploy(sub: Any) -> None:
    """Add ``securefl deploy app|check-node|check-key-holder`` to the subcommand parser."""
    p = sub.add_parser("deploy", help="deploy across institutions on Flower (docs/deployment.md)")
    dsub = p.add_subparsers(dest="deploy_command", required=True)
    a = dsub.add_parser("app", help="write the Flower App directory for `flwr run`")
    a.add_argument("--out", required=True, help="directory to write the app into")
    a.add_argument("--server-config", help="the server's deployment JSON (checked now)")
    a.set_defaults(handler=_app)
    n = dsub.add_parser("check-node", help="check a bank's manifest, identity key and data")
    n.add_argument("--member", required=True)
    n.add_argument("--key", required=True)
    n.add_argument("--manifest", required=True)
    n.add_argument("--data", required=True, help="the bank's CSV (header; label column)")
    n.add_argument("--label", default="default")
    n.add_argument("--passphrase-file")
    n.set_defaults(handler=_check_node)
    k = dsub.add_parser("check-key-holder",
                        help="check the CKKS key holder's manifest role, identity and usage file")
    k.add_argument("--member", required=True)
    k.add_argument("--key", required=True, help="its identity key (listed in the manifest)")
    k.add_argument("--manifest", required=True)
    k.add_argument("--ckks-keys", help="directory of the usage file (keyholder-usage.json)")
    k.add_argument("--usage-file", help="default: <ckks-keys>/keyholder-usage.json, or "
                   "<key>.ckks-usage.json")
    k.add_argument("--passphrase-file")
    k.set_defaults(handler=_check_key_holder)
