{{/*
Labels. Every object: part-of plus Helm's own; a service's objects also its name and component,
which (as in manifests/base) are its selector.
*/}}
{{- define "kmg.chart" -}}
{{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "kmg.commonLabels" -}}
app.kubernetes.io/part-of: kube-mcp-gateway
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ include "kmg.chart" . }}
{{- end }}

{{/* The component label of each service (manifests/base/<service>/kustomization.yaml). */}}
{{- define "kmg.component" -}}
{{- if eq . "mcp-backend" }}mcp-server{{ else if eq . "redis" }}shared-cache{{ else }}auth-plugin{{ end }}
{{- end }}

{{/* Selector labels of a service; args: (list $ "<service>"). Redis also selects part-of. */}}
{{- define "kmg.selectorLabels" -}}
{{- $svc := index . 1 -}}
app.kubernetes.io/name: {{ $svc }}
app.kubernetes.io/component: {{ include "kmg.component" $svc }}
{{- if eq $svc "redis" }}
app.kubernetes.io/part-of: kube-mcp-gateway
{{- end }}
{{- end }}

{{/* Metadata labels of a service's objects; args: (list $ "<service>"). */}}
{{- define "kmg.labels" -}}
{{ include "kmg.selectorLabels" . }}
{{- $root := index . 0 }}
{{- $svc := index . 1 }}
{{- range $k, $v := include "kmg.commonLabels" $root | fromYaml }}
{{- if not (and (eq $svc "redis") (eq $k "app.kubernetes.io/part-of")) }}
{{ $k }}: {{ $v | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* The values block of a service: mcp-backend -> .Values.mcpBackend, ... */}}
{{- define "kmg.key" -}}
{{- if eq . "mcp-backend" }}mcpBackend{{ else if eq . "token-exchange" }}tokenExchange{{ else }}policy{{ end }}
{{- end }}

{{/* Image of a service; args: (list $ "<service>"). */}}
{{- define "kmg.image" -}}
{{- $root := index . 0 -}}
{{- $svc := index . 1 -}}
{{- $own := (index $root.Values (include "kmg.key" $svc)).image -}}
{{- $repo := $own.repository | default (printf "%s/%s" $root.Values.image.repositoryPrefix $svc) -}}
{{- $tag := $own.tag | default $root.Values.image.tag | default $root.Chart.AppVersion -}}
{{ $repo }}:{{ $tag }}
{{- end }}

{{/* In-cluster names of a service in the release namespace, as Host patterns. */}}
{{- define "kmg.serviceHosts" -}}
{{- $root := index . 0 -}}
{{- $svc := index . 1 -}}
- {{ printf "%s.%s.svc.cluster.local:*" $svc $root.Release.Namespace }}
- {{ printf "%s.%s.svc:*" $svc $root.Release.Namespace }}
{{- end }}

{{- define "kmg.serviceUrl" -}}
{{- $root := index . 0 -}}
{{- $svc := index . 1 -}}
{{- printf "http://%s.%s.svc.cluster.local:8080" $svc $root.Release.Namespace -}}
{{- end }}

{{/* The server name the MCP Gateway sends in x-mcp-servername. */}}
{{- define "kmg.serverName" -}}
{{ .Values.registration.namespace }}/{{ .Values.registration.name }}
{{- end }}

{{- define "kmg.metadataUrl" -}}
{{ .Values.publicUrl }}/.well-known/oauth-protected-resource/mcp
{{- end }}

{{/* Istio SPIFFE principal of a ServiceAccount; args: (list namespace account). */}}
{{- define "kmg.principal" -}}
cluster.local/ns/{{ index . 0 }}/sa/{{ index . 1 }}
{{- end }}

{{/*
The services' settings files: the values' config with what the chart owns (listen address,
Host names, mounted files, the public URL, the engine) set over it.
*/}}
{{- define "kmg.backendConfig" -}}
{{- /* the route hostname: the :authority the router sets on a routed tools/call */ -}}
{{- $hosts := list .Values.registration.hostname (printf "%s:*" .Values.registration.hostname) -}}
{{- $hosts = concat $hosts (include "kmg.serviceHosts" (list . "mcp-backend") | fromYamlArray) .Values.mcpBackend.extraAllowedHosts -}}
{{- $owned := dict
  "host" "0.0.0.0"
  "port" 8080
  "allowed_hosts" $hosts
  "resource_url" (printf "%s/mcp" .Values.publicUrl)
  "discovery_credential_file" "/etc/kmg/discovery/token" -}}
{{- toYaml (mustMergeOverwrite (deepCopy .Values.mcpBackend.config) $owned) }}
{{- end }}

{{- define "kmg.callerAuth" -}}
{{- dict "mode" "secret" "header" .Values.callerAuth.header "secret_file" "/etc/kmg/caller/secret" | toYaml }}
{{- end }}

{{- define "kmg.tokenExchangeConfig" -}}
{{- $hosts := concat (include "kmg.serviceHosts" (list . "token-exchange") | fromYamlArray) .Values.tokenExchange.extraAllowedHosts -}}
{{- $extAuthz := dict "resource_metadata_url" (include "kmg.metadataUrl" .) -}}
{{- if eq .Values.authMode "istio-ext-authz" -}}
{{- $_ := set $extAuthz "policy_url" (printf "%s/check" (include "kmg.serviceUrl" (list . "policy"))) -}}
{{- end -}}
{{- $owned := dict
  "host" "0.0.0.0"
  "port" 8080
  "allowed_hosts" $hosts
  "ca_file" "/etc/kmg/keycloak-ca/ca.crt"
  "ext_authz" $extAuthz
  "caller_auth" (include "kmg.callerAuth" . | fromYaml) -}}
{{- toYaml (mustMergeOverwrite (deepCopy .Values.tokenExchange.config) $owned) }}
{{- end }}

{{- define "kmg.policyConfig" -}}
{{- $hosts := concat (include "kmg.serviceHosts" (list . "policy") | fromYamlArray) .Values.policy.extraAllowedHosts -}}
{{- $owned := dict
  "host" "0.0.0.0"
  "port" 8080
  "allowed_hosts" $hosts
  "engine" (ternary "opa" "embedded" .Values.policy.opa.enabled)
  "policies_dir" "/app/policies"
  "data_dirs" (list "/etc/kmg/policy-data")
  "auth" (dict "ca_file" "/etc/kmg/keycloak-ca/ca.crt" "resource_metadata_url" (include "kmg.metadataUrl" .))
  "wristband" (dict "signing_key_file" "/etc/kmg/signing/key.pem")
  "caller_auth" (include "kmg.callerAuth" . | fromYaml) -}}
{{- $config := mustMergeOverwrite (deepCopy .Values.policy.config) $owned -}}
{{- if .Values.policy.opa.enabled -}}
{{- $_ := set $config "opa" (mustMergeOverwrite (deepCopy (.Values.policy.config.opa | default dict)) (dict "url" "http://127.0.0.1:8181")) -}}
{{- else -}}
{{- $_ := unset $config "opa" -}}
{{- end -}}
{{- toYaml $config }}
{{- end }}

{{/* Pod and container security (Pod Security "restricted"; the images' user 10001). */}}
{{- define "kmg.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "kmg.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Probes of the three services (the listener "http"). */}}
{{- define "kmg.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 2
  failureThreshold: 30
livenessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 10
  timeoutSeconds: 2
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: http}
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 2
{{- end }}

{{/*
A service's Deployment; args: dict "root" $ "name" "<service>" "env" YAML "mounts" YAML
"volumes" YAML "sidecars" YAML "config" <config text for the checksum>.
*/}}
{{- define "kmg.deployment" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $v := index $root.Values (include "kmg.key" $name) -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "kmg.labels" (list $root $name) | nindent 4 }}
spec:
  {{- if $v.autoscaling.enabled }}
  # no replicas: the HorizontalPodAutoscaler owns the count
  {{- else }}
  replicas: {{ $v.replicas }}
  {{- end }}
  revisionHistoryLimit: 3
  selector:
    matchLabels:
      {{- include "kmg.selectorLabels" (list $root $name) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "kmg.selectorLabels" (list $root $name) | nindent 8 }}
        app.kubernetes.io/instance: {{ $root.Release.Name }}
        {{- if and (eq $root.Values.authMode "istio-ext-authz") $root.Values.istio.injectSidecars }}
        sidecar.istio.io/inject: "true"
        {{- end }}
      annotations:
        prometheus.io/scrape: "true"
        prometheus.io/port: "8080"
        prometheus.io/path: /metrics
        checksum/config: {{ .config | sha256sum }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ $name }}
      automountServiceAccountToken: false
      enableServiceLinks: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- include "kmg.podSecurityContext" $root | nindent 8 }}
      {{- if $v.topologySpread }}
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: DoNotSchedule
          nodeTaintsPolicy: Honor
          labelSelector:
            matchLabels:
              {{- include "kmg.selectorLabels" (list $root $name) | nindent 14 }}
          matchLabelKeys: [pod-template-hash]
        - maxSkew: 1
          topologyKey: topology.kubernetes.io/zone
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels:
              {{- include "kmg.selectorLabels" (list $root $name) | nindent 14 }}
          matchLabelKeys: [pod-template-hash]
      {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
      containers:
        - name: {{ $name }}
          image: {{ include "kmg.image" (list $root $name) }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          {{- if gt (int $v.preStopSleepSeconds) 0 }}
          lifecycle:
            preStop:
              sleep:
                seconds: {{ $v.preStopSleepSeconds }}
          {{- end }}
          args: ["serve", "--config", "/etc/kmg/config/config.yaml"]
          {{- with .env }}
          env:
            {{- . | nindent 12 }}
          {{- end }}
          ports:
            - name: http
              containerPort: 8080
              protocol: TCP
          {{- include "kmg.probes" $root | nindent 10 }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- include "kmg.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            - name: config
              mountPath: /etc/kmg/config
              readOnly: true
            {{- .mounts | nindent 12 }}
        {{- with .sidecars }}
        {{- . | nindent 8 }}
        {{- end }}
      volumes:
        - name: config
          configMap:
            name: {{ $name }}-config
        {{- .volumes | nindent 8 }}
{{- end }}

{{/* HorizontalPodAutoscaler and PodDisruptionBudget of a service; args: (list $ "<service>"). */}}
{{- define "kmg.scaling" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- $v := index $root.Values (include "kmg.key" $name) -}}
{{- if $v.autoscaling.enabled }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "kmg.labels" (list $root $name) | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ $name }}
  minReplicas: {{ $v.autoscaling.minReplicas }}
  maxReplicas: {{ $v.autoscaling.maxReplicas }}
  metrics:
    - type: ContainerResource  # the service's own container, not a sidecar's CPU
      containerResource:
        name: cpu
        container: {{ $name }}
        target:
          type: Utilization
          averageUtilization: {{ $v.autoscaling.targetCPUUtilizationPercentage }}
  behavior:
    scaleDown:
      stabilizationWindowSeconds: {{ $v.autoscaling.scaleDownStabilizationSeconds }}
{{- end }}
{{- if $v.podDisruptionBudget.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "kmg.labels" (list $root $name) | nindent 4 }}
spec:
  maxUnavailable: {{ $v.podDisruptionBudget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "kmg.selectorLabels" (list $root $name) | nindent 6 }}
{{- end }}
{{- end }}

{{/* ServiceAccount (no token) and Service (http 8080, metrics 9090 -> the same listener). */}}
{{- define "kmg.serviceObjects" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "kmg.labels" (list $root $name) | nindent 4 }}
automountServiceAccountToken: false
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "kmg.labels" (list $root $name) | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "kmg.selectorLabels" (list $root $name) | nindent 4 }}
  ports:
    - name: http
      port: 8080
      targetPort: http
      protocol: TCP
      appProtocol: http
    - name: metrics
      port: 9090
      targetPort: http
      protocol: TCP
    {{- if and (eq $name "policy") $root.Values.policy.opa.enabled }}
    - name: opa-metrics
      port: 9191
      targetPort: opa-diag
      protocol: TCP
    {{- end }}
{{- end }}

{{/* authMode istio-ext-authz: the extension provider for istiod's meshConfig (NOTES.txt). */}}
{{- define "kmg.meshConfig" -}}
meshConfig:
  extensionProviders:
    - name: {{ .Values.istio.provider }}
      envoyExtAuthzHttp:
        service: token-exchange.{{ .Release.Namespace }}.svc.cluster.local
        port: 8080
        pathPrefix: /ext-authz/combined
        timeout: 5s
        failOpen: false
        statusOnError: "503"
        includeRequestHeadersInCheck:
          - authorization
          - x-mcp-method
          - x-mcp-servername
          - x-mcp-toolname
          - x-mcp-annotation-hints
          - mcp-session-id
          - x-request-id
        includeAdditionalHeadersInCheck:
          {{ .Values.callerAuth.header }}: "<value of Secret {{ .Release.Namespace }}/{{ .Values.callerAuth.secretName }}, key secret>"
        headersToUpstreamOnAllow:
          - authorization
          - x-mcp-authorized
          - x-authorized-tools
        headersToDownstreamOnDeny:
          - www-authenticate
          - content-type
{{- end }}
