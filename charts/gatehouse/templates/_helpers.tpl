{{/* Chart name, truncated to 63 characters (DNS label). */}}
{{- define "gatehouse.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name; also the Service name, so it is what the certificate names. */}}
{{- define "gatehouse.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "gatehouse.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gatehouse.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gatehouse.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gatehouse.labels" -}}
helm.sh/chart: {{ include "gatehouse.chart" . }}
{{ include "gatehouse.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: admission-webhook
{{- end }}

{{- define "gatehouse.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gatehouse.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding tls.crt / tls.key (and ca.crt where the chart or cert-manager makes it). */}}
{{- define "gatehouse.tlsSecretName" -}}
{{- if eq .Values.tls.mode "secret" }}
{{- required "tls.secret.name is required when tls.mode is secret" .Values.tls.secret.name }}
{{- else }}
{{- printf "%s-tls" (include "gatehouse.fullname" .) }}
{{- end }}
{{- end }}

{{- define "gatehouse.policiesConfigMapName" -}}
{{- default (printf "%s-policies" (include "gatehouse.fullname" .)) .Values.policies.existingConfigMap }}
{{- end }}

{{- define "gatehouse.twilioSecretName" -}}
{{- default (printf "%s-twilio" (include "gatehouse.fullname" .)) .Values.twilio.existingSecret }}
{{- end }}

{{/* Every DNS name the API server may use for the Service, as a YAML list. */}}
{{- define "gatehouse.dnsNames" -}}
{{- $svc := include "gatehouse.fullname" . }}
{{- $ns := .Release.Namespace }}
- {{ $svc }}
- {{ $svc }}.{{ $ns }}
- {{ $svc }}.{{ $ns }}.svc
- {{ $svc }}.{{ $ns }}.svc.cluster.local
{{- end }}

{{/* Namespaces the webhook is never called for: kube-system, the release namespace, more. */}}
{{- define "gatehouse.excludedNamespaces" -}}
{{- $all := concat (list "kube-system" .Release.Namespace) .Values.webhook.excludedNamespaces | uniq }}
{{- toYaml $all }}
{{- end }}

{{- define "gatehouse.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Gatehouse's config.yaml. */}}
{{- define "gatehouse.config" -}}
{{- $timeout := max 1 (sub (int .Values.webhook.timeoutSeconds) 1) }}
{{- $excluded := concat (include "gatehouse.excludedNamespaces" . | fromYamlArray) .Values.config.excludedNamespaces | uniq }}
{{- $config := dict
  "listen" (printf "0.0.0.0:%d" (int .Values.containerPorts.webhook))
  "health_listen" (printf "0.0.0.0:%d" (int .Values.containerPorts.health))
  "tls_cert" "/etc/gatehouse/tls/tls.crt"
  "tls_key" "/etc/gatehouse/tls/tls.key"
  "policies" "/etc/gatehouse/policies"
  "data_dir" "/var/lib/gatehouse"
  "excluded_namespaces" $excluded
  "log_format" .Values.config.logFormat
  "reload_interval" .Values.config.reloadInterval
  "limits" (dict "request_timeout" (printf "%ds" $timeout) "shutdown_grace" .Values.config.shutdownGrace "shutdown_delay" .Values.config.shutdownDelay "max_inflight_body_bytes" (int64 .Values.config.maxInflightBodyBytes) "idle_timeout" .Values.config.idleTimeout "max_connections" (int64 .Values.config.maxConnections) "max_connections_per_source" (int64 .Values.config.maxConnectionsPerSource) "max_handshakes_per_source" (int64 .Values.config.maxHandshakesPerSource) "max_concurrent_requests" (int64 .Values.config.maxConcurrentRequests) "max_streams_per_connection" (int64 .Values.config.maxStreamsPerConnection) "min_body_bytes_per_second" (int64 .Values.config.minBodyBytesPerSecond) "body_rate_grace" .Values.config.bodyRateGrace "health_max_connections" (int64 .Values.config.healthMaxConnections) "health_max_connections_per_source" (int64 .Values.config.healthMaxConnectionsPerSource))
}}
{{- toYaml (mustMergeOverwrite $config (deepCopy .Values.config.extra)) }}
{{- end }}

{{/* A Gatehouse duration (500ms, 10s, 5m, 1h, 2d or a number of seconds) in whole seconds,
rounded up. */}}
{{- define "gatehouse.durationSeconds" -}}
{{- $text := toString . | trim }}
{{- $num := regexFind "^[0-9]+" $text }}
{{- $n := int64 (default "0" $num) }}
{{- $unit := trimPrefix $num $text | trim }}
{{- if eq $unit "ms" }}{{ div (add $n 999) 1000 }}
{{- else if eq $unit "m" }}{{ mul $n 60 }}
{{- else if eq $unit "h" }}{{ mul $n 3600 }}
{{- else if eq $unit "d" }}{{ mul $n 86400 }}
{{- else }}{{ $n }}
{{- end }}
{{- end }}

{{/* terminationGracePeriodSeconds, refused when shorter than Gatehouse's own shutdown
(limits.shutdown_delay + limits.shutdown_grace as config.yaml ends up with them, extra included):
the kubelet would kill the pod while it still serves. */}}
{{- define "gatehouse.terminationGracePeriodSeconds" -}}
{{- $limits := (include "gatehouse.config" . | fromYaml).limits }}
{{- $delay := include "gatehouse.durationSeconds" $limits.shutdown_delay | int64 }}
{{- $grace := include "gatehouse.durationSeconds" $limits.shutdown_grace | int64 }}
{{- $period := int64 .Values.terminationGracePeriodSeconds }}
{{- if lt $period (add $delay $grace) }}
{{- fail (printf "terminationGracePeriodSeconds is %d but Gatehouse's shutdown takes up to %ds (shutdown delay %s + shutdown grace %s): raise terminationGracePeriodSeconds or lower config.shutdownDelay / config.shutdownGrace" $period (add $delay $grace) (toString $limits.shutdown_delay) (toString $limits.shutdown_grace)) }}
{{- end }}
{{- $period }}
{{- end }}
