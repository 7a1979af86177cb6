"""A stand-in for a stock EMQX's file transfer (apps/emqx_ft), for tests and benchmarks.

No EMQX can run on these machines, so this implements emqx_ft's interface and
behaviour as EMQX's source defines them (every rule cites its file and function)
in front of a real mosquitto 2.0:

    client --TLS--> front (this package) --plain, 127.0.0.1--> mosquitto
                      |  ``$file…`` commands: handled here, never forwarded
                      +--> responder (MQTT 5 client) --> mosquitto: results

mosquitto keeps authentication (passwords), ACLs, sessions and the routing of every
ordinary message; the front relays each connection byte for byte, framing packets
in both directions (mqtt.py), reading CONNECT (client id), CONNACK (accepted?) and
PUBLISH. Results go out as broker messages do in EMQX (emqx_ft.erl
publish_response/2 calls emqx_broker:publish/1): QoS 1 to the command's
Response-Topic (or ``$file-response/{clientid}``) with its Correlation-Data, routed
by mosquitto to whoever may read them; the async fin's result is published when the
export ends (on_fin/5, emqx_ft_responder.erl).

Why a front and not a mosquitto plugin: a plugin's MOSQ_EVT_MESSAGE callback can only
return MOSQ_ERR_SUCCESS, MOSQ_ERR_ACL_DENIED (PUBACK 0x87) or another error (the
client is disconnected): it cannot make mosquitto answer 0x80, the only refusal
emqx_ft sends (result_to_rc/1), nor delay a sync fin's PUBACK until assembly ends,
nor 0x10 for a crashed hook. The S3 exporter would also need an S3 client written in
C. The front does all of this in Python with boto3, and stays a separate process
in front of a real broker, not a mock inside the client.

Modules: ``_erlang`` (term_to_binary, escape_filename, is_filename_safe, jiffy
output), ``filemeta`` (emqx_ft_schema's filemeta), ``ft`` (the pure protocol core),
``storage`` (emqx_ft_storage_fs's segment layout), ``exporters`` (local and S3),
``mqtt`` (framing), ``front`` (the relay), ``bed`` (mosquitto + front + moto for tests).

Differences from EMQX that a test could notice: no cluster (one node: remote
fragments, remote assemblers); a ``$file`` publish is not checked against
mosquitto's ACL (EMQX's authorization runs before the hook; give docks
``$file-async/#`` there); no HTTP API (``/file_transfer/files``); floats in
user_data are written in Python's notation, not jiffy's.
"""
