/*
 * fuzz_methods.h - every antifragility.v1 RPC, for the fuzz harnesses and
 * the seed generator:
 *   X(Service, Method, Request, request_snake, Response, response_snake,
 *     UNARY | CS (client stream) | SS (server stream))
 * Kept by hand next to protos/; test_wire's RPC-name check keeps the
 * protos honest, fuzz_seeds checks this table against the descriptors.
 */
#ifndef AF_FUZZ_METHODS_H
#define AF_FUZZ_METHODS_H

#define AF_FUZZ_METHODS(X)                                                     \
  X(BreakerService, RegisterBreaker, RegisterBreakerRequest,                   \
    register_breaker_request, RegisterBreakerResponse,                         \
    register_breaker_response, UNARY)                                          \
  X(BreakerService, ReportOutcome, ReportOutcomeRequest,                       \
    report_outcome_request, ReportOutcomeResponse, report_outcome_response,    \
    UNARY)                                                                     \
  X(BreakerService, ReportOutcomes, ReportOutcomeRequest,                      \
    report_outcome_request, ReportOutcomesResponse, report_outcomes_response,  \
    CS)                                                                        \
  X(BreakerService, ReportState, ReportStateRequest, report_state_request,     \
    ReportStateResponse, report_state_response, UNARY)                         \
  X(BreakerService, GetBreaker, GetBreakerRequest, get_breaker_request,        \
    GetBreakerResponse, get_breaker_response, UNARY)                           \
  X(BreakerService, ListBreakers, ListBreakersRequest, list_breakers_request,  \
    ListBreakersResponse, list_breakers_response, UNARY)                       \
  X(BreakerService, ResetBreaker, ResetBreakerRequest, reset_breaker_request,  \
    ResetBreakerResponse, reset_breaker_response, UNARY)                       \
  X(BreakerService, ResetAllBreakers, ResetAllBreakersRequest,                 \
    reset_all_breakers_request, ResetAllBreakersResponse,                      \
    reset_all_breakers_response, UNARY)                                        \
  X(BreakerService, UnregisterBreaker, UnregisterBreakerRequest,               \
    unregister_breaker_request, UnregisterBreakerResponse,                     \
    unregister_breaker_response, UNARY)                                        \
  X(BreakerService, WatchBreakers, WatchBreakersRequest,                       \
    watch_breakers_request, WatchBreakersResponse, watch_breakers_response,    \
    SS)                                                                        \
  X(ChaosService, InjectLatency, InjectLatencyRequest, inject_latency_request, \
    InjectLatencyResponse, inject_latency_response, UNARY)                     \
  X(ChaosService, InjectErrors, InjectErrorsRequest, inject_errors_request,    \
    InjectErrorsResponse, inject_errors_response, UNARY)                       \
  X(ChaosService, ForceCircuitOpen, ForceCircuitOpenRequest,                   \
    force_circuit_open_request, ForceCircuitOpenResponse,                      \
    force_circuit_open_response, UNARY)                                        \
  X(ChaosService, SimulateResourceExhaustion,                                  \
    SimulateResourceExhaustionRequest, simulate_resource_exhaustion_request,   \
    SimulateResourceExhaustionResponse, simulate_resource_exhaustion_response, \
    UNARY)                                                                     \
  X(ChaosService, DeactivateScenario, DeactivateScenarioRequest,               \
    deactivate_scenario_request, DeactivateScenarioResponse,                   \
    deactivate_scenario_response, UNARY)                                       \
  X(ChaosService, ListScenarios, ListScenariosRequest, list_scenarios_request, \
    ListScenariosResponse, list_scenarios_response, UNARY)                     \
  X(ChaosService, EmergencyStop, EmergencyStopRequest, emergency_stop_request, \
    EmergencyStopResponse, emergency_stop_response, UNARY)                     \
  X(ChaosService, ResetChaos, ResetChaosRequest, reset_chaos_request,          \
    ResetChaosResponse, reset_chaos_response, UNARY)                           \
  X(ChaosService, GetChaosMetrics, GetChaosMetricsRequest,                     \
    get_chaos_metrics_request, GetChaosMetricsResponse,                        \
    get_chaos_metrics_response, UNARY)                                         \
  X(ChaosService, CheckInjection, CheckInjectionRequest,                       \
    check_injection_request, CheckInjectionResponse, check_injection_response, \
    UNARY)                                                                     \
  X(ChaosService, WatchScenarios, WatchScenariosRequest,                       \
    watch_scenarios_request, WatchScenariosResponse, watch_scenarios_response, \
    SS)                                                                        \
  X(HealthService, GetSystemHealth, GetSystemHealthRequest,                    \
    get_system_health_request, GetSystemHealthResponse,                        \
    get_system_health_response, UNARY)                                         \
  X(HealthService, GetHealthHistory, GetHealthHistoryRequest,                  \
    get_health_history_request, GetHealthHistoryResponse,                      \
    get_health_history_response, UNARY)                                        \
  X(HealthService, WatchHealth, WatchHealthRequest, watch_health_request,      \
    WatchHealthResponse, watch_health_response, SS)                            \
  X(HealthService, GetHealthMetrics, GetHealthMetricsRequest,                  \
    get_health_metrics_request, GetHealthMetricsResponse,                      \
    get_health_metrics_response, UNARY)                                        \
  X(MeteringService, RecordUsage, RecordUsageRequest, record_usage_request,    \
    RecordUsageResponse, record_usage_response, UNARY)                         \
  X(MeteringService, RecordUsageStream, RecordUsageRequest,                    \
    record_usage_request, RecordUsageStreamResponse,                           \
    record_usage_stream_response, CS)                                          \
  X(MeteringService, QueryUsage, QueryUsageRequest, query_usage_request,       \
    QueryUsageResponse, query_usage_response, UNARY)                           \
  X(MeteringService, GetMeteringMetrics, GetMeteringMetricsRequest,            \
    get_metering_metrics_request, GetMeteringMetricsResponse,                  \
    get_metering_metrics_response, UNARY)                                      \
  X(RecoveryService, ScheduleRecovery, ScheduleRecoveryRequest,                \
    schedule_recovery_request, ScheduleRecoveryResponse,                       \
    schedule_recovery_response, UNARY)                                         \
  X(RecoveryService, ExecuteRecovery, ExecuteRecoveryRequest,                  \
    execute_recovery_request, ExecuteRecoveryResponse,                         \
    execute_recovery_response, UNARY)                                          \
  X(RecoveryService, CancelRecovery, CancelRecoveryRequest,                    \
    cancel_recovery_request, CancelRecoveryResponse, cancel_recovery_response, \
    UNARY)                                                                     \
  X(RecoveryService, ApproveRecovery, ApproveRecoveryRequest,                  \
    approve_recovery_request, ApproveRecoveryResponse,                         \
    approve_recovery_response, UNARY)                                          \
  X(RecoveryService, GetRecoveryStatus, GetRecoveryStatusRequest,              \
    get_recovery_status_request, GetRecoveryStatusResponse,                    \
    get_recovery_status_response, UNARY)                                       \
  X(RecoveryService, SetRecoveryPolicy, SetRecoveryPolicyRequest,              \
    set_recovery_policy_request, SetRecoveryPolicyResponse,                    \
    set_recovery_policy_response, UNARY)                                       \
  X(RecoveryService, GetRecoveryPolicy, GetRecoveryPolicyRequest,              \
    get_recovery_policy_request, GetRecoveryPolicyResponse,                    \
    get_recovery_policy_response, UNARY)                                       \
  X(RecoveryService, WatchRecovery, WatchRecoveryRequest,                      \
    watch_recovery_request, WatchRecoveryResponse, watch_recovery_response,    \
    SS)

#endif /* AF_FUZZ_METHODS_H */
