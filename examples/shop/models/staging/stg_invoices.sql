with source as (

    select * from {{ source('raw', 'invoices') }}

),

renamed as (

    select
        invoice_id,
        subscription_id,
        customer_id,
        {{ cents_to_dollars('amount_cents') }} as amount,
        status as invoice_status,
        period_start,
        period_end,
        issued_at,
        _loaded_at

    from source

)

select * from renamed
